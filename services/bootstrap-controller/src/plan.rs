//! The bootstrap order (ksctl's distribution controller), as a pure function: waves of host
//! steps; the steps of one wave run in parallel, waves run one after another.
use ksctl_core::records::{Role, Vm};
use ksctl_core::spec::Distro;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostStep {
    pub step: &'static str,
    pub host: Vm,
}

impl HostStep {
    /// The checkpoint key: `<step>@<host name>/<host id>`. The id matters: a worker removed by
    /// scale-down and created again under the same name is a new host that must join again.
    pub fn key(&self) -> String {
        format!("{}@{}/{}", self.step, self.host.name, self.host.id)
    }
}

/// Load balancer and all datastores → first control plane alone → the other control planes
/// and all workers.
pub fn bootstrap_waves(vms: &[Vm], distro: Distro) -> Vec<Vec<HostStep>> {
    let of = |role: Role| {
        let mut v: Vec<Vm> = vms.iter().filter(|v| v.role == role).cloned().collect();
        v.sort_by_key(|v| v.index);
        v
    };
    let (init, server_join, agent_join) = steps(distro);
    let mut first: Vec<HostStep> =
        of(Role::LoadBalancer).into_iter().map(|host| HostStep { step: "haproxy", host }).collect();
    first.extend(of(Role::Datastore).into_iter().map(|host| HostStep { step: "etcd", host }));
    let cps = of(Role::ControlPlane);
    let second: Vec<HostStep> = cps.first().cloned().map(|host| HostStep { step: init, host }).into_iter().collect();
    let mut third: Vec<HostStep> = cps.into_iter().skip(1).map(|host| HostStep { step: server_join, host }).collect();
    third.extend(of(Role::Worker).into_iter().map(|host| HostStep { step: agent_join, host }));
    vec![first, second, third]
}

/// Steps that join workers not yet joined (scale up).
pub fn join_wave(vms: &[Vm], distro: Distro, done: &std::collections::BTreeSet<String>) -> Vec<HostStep> {
    let (_, _, agent_join) = steps(distro);
    let mut v: Vec<HostStep> = vms
        .iter()
        .filter(|v| v.role == Role::Worker)
        .map(|host| HostStep { step: agent_join, host: host.clone() })
        .filter(|s| !done.contains(&s.key()))
        .collect();
    v.sort_by_key(|s| s.host.index);
    v
}

fn steps(distro: Distro) -> (&'static str, &'static str, &'static str) {
    match distro {
        Distro::K3s => ("k3s-init", "k3s-server-join", "k3s-agent-join"),
        Distro::Kubeadm => ("kubeadm-init", "kubeadm-cp-join", "kubeadm-worker-join"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(role: Role, index: u32) -> Vm {
        Vm {
            id: format!("{role:?}{index}"),
            name: format!("{}-{index}", role.as_str()),
            role,
            index,
            public_ip: String::new(),
            private_ip: String::new(),
        }
    }

    #[test]
    fn waves_follow_ksctl_order() {
        let vms = vec![
            vm(Role::Worker, 0),
            vm(Role::ControlPlane, 1),
            vm(Role::ControlPlane, 0),
            vm(Role::LoadBalancer, 0),
            vm(Role::Datastore, 0),
            vm(Role::Datastore, 1),
            vm(Role::ControlPlane, 2),
        ];
        let w = bootstrap_waves(&vms, Distro::K3s);
        let names: Vec<Vec<String>> =
            w.iter().map(|wave| wave.iter().map(|s| format!("{}@{}", s.step, s.host.name)).collect()).collect();
        assert_eq!(names[0], ["haproxy@lb-0", "etcd@ds-0", "etcd@ds-1"]);
        assert_eq!(names[1], ["k3s-init@cp-0"]);
        assert_eq!(names[2], ["k3s-server-join@cp-1", "k3s-server-join@cp-2", "k3s-agent-join@wp-0"]);
    }

    #[test]
    fn join_wave_skips_joined_workers() {
        let vms = vec![vm(Role::Worker, 0), vm(Role::Worker, 1)];
        let done = ["kubeadm-worker-join@wp-0/Worker0".to_string()].into_iter().collect();
        let w = join_wave(&vms, Distro::Kubeadm, &done);
        assert_eq!(w.len(), 1);
        assert_eq!(w[0].host.index, 1);
    }
}
