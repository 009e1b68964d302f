//! The saga plan: which phases each operation runs, in which order, on which controller.
//! Mirrors ksctl's sequence diagrams; pure so that ordering is unit-tested without a network.
use crate::spec::ClusterType;
use crate::state::OpKind;
use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    CloudCreate,
    Bootstrap,
    K8sInstall,
    K8sUninstall,
    CloudDelete,
    CloudScaleUp,
    BootstrapJoin,
    K8sDrain,
    CloudScaleDown,
    K8sAddon,
    /// Applies or deletes a user's application stack (`ksctl cluster apps`).
    K8sApps,
}

/// The controller (and work-queue stream) that runs a phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Cloud,
    Bootstrap,
    K8s,
}

impl Service {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cloud => "cloud",
            Self::Bootstrap => "bootstrap",
            Self::K8s => "k8s",
        }
    }
}

impl Phase {
    pub const ALL: [Phase; 11] = [
        Self::CloudCreate,
        Self::Bootstrap,
        Self::K8sInstall,
        Self::K8sUninstall,
        Self::CloudDelete,
        Self::CloudScaleUp,
        Self::BootstrapJoin,
        Self::K8sDrain,
        Self::CloudScaleDown,
        Self::K8sAddon,
        Self::K8sApps,
    ];
    pub fn service(self) -> Service {
        match self {
            Self::CloudCreate | Self::CloudDelete | Self::CloudScaleUp | Self::CloudScaleDown => Service::Cloud,
            Self::Bootstrap | Self::BootstrapJoin => Service::Bootstrap,
            Self::K8sInstall | Self::K8sUninstall | Self::K8sDrain | Self::K8sAddon | Self::K8sApps => Service::K8s,
        }
    }
    /// The last token of the command subject, `ksctl.<service>.<verb>`.
    pub fn verb(self) -> &'static str {
        match self {
            Self::CloudCreate => "create",
            Self::CloudDelete => "delete",
            Self::CloudScaleUp => "scale_up",
            Self::CloudScaleDown => "scale_down",
            Self::Bootstrap => "create",
            Self::BootstrapJoin => "join",
            Self::K8sInstall => "install",
            Self::K8sUninstall => "uninstall",
            Self::K8sDrain => "drain",
            Self::K8sAddon => "addon",
            Self::K8sApps => "apps",
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CloudCreate => "cloud_create",
            Self::Bootstrap => "bootstrap",
            Self::K8sInstall => "k8s_install",
            Self::K8sUninstall => "k8s_uninstall",
            Self::CloudDelete => "cloud_delete",
            Self::CloudScaleUp => "cloud_scale_up",
            Self::BootstrapJoin => "bootstrap_join",
            Self::K8sDrain => "k8s_drain",
            Self::CloudScaleDown => "cloud_scale_down",
            Self::K8sAddon => "k8s_addon",
            Self::K8sApps => "k8s_apps",
        }
    }
    pub fn from_subject(service: &str, verb: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.service().as_str() == service && p.verb() == verb)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The phases of an operation, in order.
pub fn phases(kind: OpKind, cluster_type: ClusterType) -> &'static [Phase] {
    use ClusterType::*;
    use Phase::*;
    match (kind, cluster_type) {
        (OpKind::Create, Managed) => &[CloudCreate, K8sInstall],
        (OpKind::Create, Selfmanaged) => &[CloudCreate, Bootstrap, K8sInstall],
        (OpKind::Delete, _) => &[K8sUninstall, CloudDelete],
        (OpKind::ScaleUp, Managed) => &[CloudScaleUp],
        (OpKind::ScaleUp, Selfmanaged) => &[CloudScaleUp, BootstrapJoin],
        // A managed pool drains the nodes it removes itself (EKS, AKS honour PodDisruptionBudgets).
        (OpKind::ScaleDown, Managed) => &[CloudScaleDown],
        (OpKind::ScaleDown, Selfmanaged) => &[K8sDrain, CloudScaleDown],
        (OpKind::AddonEnable | OpKind::AddonDisable, _) => &[K8sAddon],
        (OpKind::AppsApply | OpKind::AppsDelete, _) => &[K8sApps],
    }
}

pub fn first_phase(kind: OpKind, cluster_type: ClusterType) -> Phase {
    phases(kind, cluster_type)[0]
}

/// The phase after `phase`, or `None` when the operation is complete.
pub fn next_phase(kind: OpKind, cluster_type: ClusterType, phase: Phase) -> Option<Phase> {
    let plan = phases(kind, cluster_type);
    let i = plan.iter().position(|p| *p == phase)?;
    plan.get(i + 1).copied()
}

/// The phase before `phase`, used to recognise a redelivered result whose follow-up was
/// already recorded (so the follow-up command is re-published, not lost).
pub fn previous_phase(kind: OpKind, cluster_type: ClusterType, phase: Phase) -> Option<Phase> {
    let plan = phases(kind, cluster_type);
    let i = plan.iter().position(|p| *p == phase)?;
    i.checked_sub(1).map(|j| plan[j])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selfmanaged_create_runs_cloud_bootstrap_k8s() {
        let t = ClusterType::Selfmanaged;
        assert_eq!(first_phase(OpKind::Create, t), Phase::CloudCreate);
        assert_eq!(next_phase(OpKind::Create, t, Phase::CloudCreate), Some(Phase::Bootstrap));
        assert_eq!(next_phase(OpKind::Create, t, Phase::Bootstrap), Some(Phase::K8sInstall));
        assert_eq!(next_phase(OpKind::Create, t, Phase::K8sInstall), None);
        assert_eq!(previous_phase(OpKind::Create, t, Phase::Bootstrap), Some(Phase::CloudCreate));
        assert_eq!(previous_phase(OpKind::Create, t, Phase::CloudCreate), None);
    }

    #[test]
    fn managed_create_skips_bootstrap() {
        assert_eq!(next_phase(OpKind::Create, ClusterType::Managed, Phase::CloudCreate), Some(Phase::K8sInstall));
    }

    #[test]
    fn scale_down_drains_before_cloud() {
        assert_eq!(phases(OpKind::ScaleDown, ClusterType::Selfmanaged), [Phase::K8sDrain, Phase::CloudScaleDown]);
        // Managed pools drain what they remove; only the cloud phase runs.
        assert_eq!(phases(OpKind::ScaleDown, ClusterType::Managed), [Phase::CloudScaleDown]);
        assert_eq!(phases(OpKind::ScaleUp, ClusterType::Selfmanaged), [Phase::CloudScaleUp, Phase::BootstrapJoin]);
    }

    #[test]
    fn subjects_round_trip() {
        for p in Phase::ALL {
            assert_eq!(Phase::from_subject(p.service().as_str(), p.verb()), Some(p));
        }
    }
}
