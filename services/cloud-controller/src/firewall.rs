//! The firewall rule set per role (ksctl's port matrix), a pure function shared by every cloud.
use ksctl_core::records::Role;
use ksctl_core::spec::{Cni, Distro};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// Where traffic may come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Anywhere,
    /// The cluster's own network.
    Network,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub proto: Proto,
    pub from_port: u16,
    pub to_port: u16,
    pub source: Source,
    pub description: &'static str,
}

const fn tcp(from_port: u16, to_port: u16, source: Source, description: &'static str) -> Rule {
    Rule { proto: Proto::Tcp, from_port, to_port, source, description }
}
const fn udp(from_port: u16, to_port: u16, source: Source, description: &'static str) -> Rule {
    Rule { proto: Proto::Udp, from_port, to_port, source, description }
}

/// The pod-network ports a CNI needs between nodes (`None`: the distro's default, flannel).
fn cni_rules(cni: Option<Cni>) -> Vec<Rule> {
    match cni.unwrap_or(Cni::Flannel) {
        Cni::Flannel => vec![udp(8472, 8472, Source::Network, "VXLAN overlay")],
        Cni::Cilium => vec![
            udp(8472, 8472, Source::Network, "cilium VXLAN overlay"),
            tcp(4240, 4240, Source::Network, "cilium health"),
            tcp(4244, 4244, Source::Network, "hubble server"),
        ],
        // ksctl runs Calico's pool in VXLAN mode (no IP-in-IP, which clouds do not pass).
        Cni::Calico => {
            vec![tcp(179, 179, Source::Network, "calico BGP"), udp(4789, 4789, Source::Network, "calico VXLAN")]
        }
        Cni::None => vec![],
    }
}

/// Ingress rules for one role. Egress is open.
pub fn rules(role: Role, distro: Option<Distro>, cni: Option<Cni>) -> Vec<Rule> {
    use Source::*;
    let ssh = tcp(22, 22, Anywhere, "SSH");
    let node = |api: bool| {
        let mut v = vec![];
        if api {
            v.push(tcp(6443, 6443, Network, "Kubernetes API"));
        }
        v.push(tcp(10250, 10250, Network, "kubelet"));
        v.push(tcp(30000, 32767, Anywhere, "NodePort services"));
        v.push(ssh);
        v.extend(cni_rules(cni));
        v
    };
    match role {
        Role::LoadBalancer => vec![tcp(6443, 6443, Anywhere, "Kubernetes API via the load balancer"), ssh],
        Role::ControlPlane => node(true),
        Role::Worker | Role::Managed => {
            let mut v = node(false);
            if distro == Some(Distro::Kubeadm) {
                v.push(tcp(10256, 10256, Network, "kube-proxy health"));
            }
            v
        }
        Role::Datastore => vec![tcp(2379, 2380, Network, "etcd client and peer"), ssh],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ports(rs: &[Rule]) -> Vec<(Proto, u16, u16, Source)> {
        rs.iter().map(|r| (r.proto, r.from_port, r.to_port, r.source)).collect()
    }

    #[test]
    fn load_balancer_opens_api_and_ssh_to_the_world() {
        assert_eq!(
            ports(&rules(Role::LoadBalancer, Some(Distro::K3s), None)),
            [(Proto::Tcp, 6443, 6443, Source::Anywhere), (Proto::Tcp, 22, 22, Source::Anywhere)]
        );
    }

    #[test]
    fn control_plane_matrix() {
        let r = ports(&rules(Role::ControlPlane, Some(Distro::K3s), None));
        assert!(r.contains(&(Proto::Tcp, 6443, 6443, Source::Network)));
        assert!(r.contains(&(Proto::Tcp, 10250, 10250, Source::Network)));
        assert!(r.contains(&(Proto::Tcp, 30000, 32767, Source::Anywhere)));
        assert!(r.contains(&(Proto::Udp, 8472, 8472, Source::Network)));
        assert!(!r.iter().any(|p| p.3 == Source::Anywhere && p.1 == 6443), "API only from the network");
    }

    #[test]
    fn workers_have_no_api_and_kubeadm_adds_kube_proxy() {
        let k3s = ports(&rules(Role::Worker, Some(Distro::K3s), None));
        assert!(!k3s.iter().any(|p| p.1 == 6443));
        assert!(!k3s.iter().any(|p| p.1 == 10256));
        let kubeadm = ports(&rules(Role::Worker, Some(Distro::Kubeadm), None));
        assert!(kubeadm.contains(&(Proto::Tcp, 10256, 10256, Source::Network)));
    }

    #[test]
    fn datastores_and_cni_choices() {
        assert_eq!(
            ports(&rules(Role::Datastore, None, None)),
            [(Proto::Tcp, 2379, 2380, Source::Network), (Proto::Tcp, 22, 22, Source::Anywhere)]
        );
        let calico = ports(&rules(Role::ControlPlane, Some(Distro::Kubeadm), Some(Cni::Calico)));
        assert!(calico.contains(&(Proto::Tcp, 179, 179, Source::Network)) && !calico.iter().any(|p| p.1 == 8472));
        assert!(calico.contains(&(Proto::Udp, 4789, 4789, Source::Network)));
        let cilium = ports(&rules(Role::Worker, Some(Distro::K3s), Some(Cni::Cilium)));
        for p in [(Proto::Udp, 8472, 8472, Source::Network), (Proto::Tcp, 4240, 4240, Source::Network)] {
            assert!(cilium.contains(&p), "{p:?}");
        }
        let none = ports(&rules(Role::ControlPlane, Some(Distro::Kubeadm), Some(Cni::None)));
        assert!(!none.iter().any(|p| p.0 == Proto::Udp));
    }
}
