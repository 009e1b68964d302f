//! The bootstrap order (ksctl's distribution controller), as a pure function: waves of host
//! steps; the steps of one wave run in parallel, waves run one after another.
use ksctl_core::records::{Role, Vm};
use ksctl_core::spec::Distro;
use std::time::Duration;

ksctl_core::vocabulary! {
    /// One kind of work on one host. The spelling is in checkpoint keys (see [`HostStep::key`])
    /// and in the host's own step marks: it never changes.
    pub enum Step {
        Haproxy = "haproxy",
        Etcd = "etcd",
        K3sInit = "k3s-init",
        K3sServerJoin = "k3s-server-join",
        K3sAgentJoin = "k3s-agent-join",
        KubeadmInit = "kubeadm-init",
        KubeadmCpJoin = "kubeadm-cp-join",
        KubeadmWorkerJoin = "kubeadm-worker-join",
    }
}

/// How long a command on a host may run unless it is a step that installs more.
pub const HOST_COMMAND_TIMEOUT: Duration = Duration::from_secs(900);

impl Step {
    /// How long the step may run on a host (installs download packages and binaries).
    pub fn timeout(self) -> Duration {
        match self {
            Step::Haproxy => Duration::from_secs(300),
            Step::Etcd => Duration::from_secs(600),
            Step::KubeadmInit | Step::KubeadmCpJoin | Step::KubeadmWorkerJoin => Duration::from_secs(1800),
            Step::K3sInit | Step::K3sServerJoin | Step::K3sAgentJoin => HOST_COMMAND_TIMEOUT,
        }
    }

    /// A distro's steps: (first control plane, other control planes, workers).
    fn of_distro(distro: Distro) -> (Step, Step, Step) {
        match distro {
            Distro::K3s => (Step::K3sInit, Step::K3sServerJoin, Step::K3sAgentJoin),
            Distro::Kubeadm => (Step::KubeadmInit, Step::KubeadmCpJoin, Step::KubeadmWorkerJoin),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostStep {
    pub step: Step,
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
    let hosts = |role: Role| {
        let mut v: Vec<Vm> = vms.iter().filter(|v| v.role == role).cloned().collect();
        v.sort_by_key(|v| v.index);
        v
    };
    let (init, server_join, agent_join) = Step::of_distro(distro);
    let mut first: Vec<HostStep> =
        hosts(Role::LoadBalancer).into_iter().map(|host| HostStep { step: Step::Haproxy, host }).collect();
    first.extend(hosts(Role::Datastore).into_iter().map(|host| HostStep { step: Step::Etcd, host }));
    let cps = hosts(Role::ControlPlane);
    let second: Vec<HostStep> = cps.first().cloned().map(|host| HostStep { step: init, host }).into_iter().collect();
    let mut third: Vec<HostStep> = cps.into_iter().skip(1).map(|host| HostStep { step: server_join, host }).collect();
    third.extend(hosts(Role::Worker).into_iter().map(|host| HostStep { step: agent_join, host }));
    vec![first, second, third]
}

/// Steps that join workers not yet joined (scale up).
pub fn join_wave(vms: &[Vm], distro: Distro, done: &std::collections::BTreeSet<String>) -> Vec<HostStep> {
    let (_, _, agent_join) = Step::of_distro(distro);
    let mut v: Vec<HostStep> = vms
        .iter()
        .filter(|v| v.role == Role::Worker)
        .map(|host| HostStep { step: agent_join, host: host.clone() })
        .filter(|s| !done.contains(&s.key()))
        .collect();
    v.sort_by_key(|s| s.host.index);
    v
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

    /// Checkpoint keys written before steps were an enum: a bootstrap record holding them still
    /// resumes with nothing to do.
    #[test]
    fn checkpoints_of_earlier_releases_still_count() {
        let old: ksctl_core::records::BootstrapRecord = serde_json::from_str(
            r#"{"steps_done": [
                "haproxy@lb-0/LoadBalancer0", "etcd@ds-0/Datastore0", "k3s-init@cp-0/ControlPlane0",
                "k3s-server-join@cp-1/ControlPlane1", "k3s-agent-join@wp-0/Worker0",
                "kubeadm-init@cp-0/ControlPlane0", "kubeadm-cp-join@cp-1/ControlPlane1",
                "kubeadm-worker-join@wp-0/Worker0"
            ]}"#,
        )
        .unwrap();
        let vms = [
            vm(Role::LoadBalancer, 0),
            vm(Role::Datastore, 0),
            vm(Role::ControlPlane, 0),
            vm(Role::ControlPlane, 1),
            vm(Role::Worker, 0),
        ];
        let mut seen = std::collections::BTreeSet::new();
        for distro in [Distro::K3s, Distro::Kubeadm] {
            for s in bootstrap_waves(&vms, distro).into_iter().flatten() {
                assert!(old.steps_done.contains(&s.key()), "{} is not the spelling stored before", s.key());
                seen.insert(s.step);
            }
            assert!(join_wave(&vms, distro, &old.steps_done).is_empty());
        }
        assert_eq!(seen.len(), Step::ALL.len(), "every step is planned by some distro");
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
